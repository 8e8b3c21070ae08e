"""Satellite link simulator: composable channel models and the link daemon."""
