"""Recipes that produce lit_ft's bundled assets, so anyone can rebuild them."""
