#compdef dreamctl

_dreamctl_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _DREAMCTL_COMPLETE=complete_zsh dreamctl)
}

compdef _dreamctl_completion dreamctl
