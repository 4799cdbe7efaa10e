"""What users do with a trained run: evaluate it, watch its dream, write videos."""
