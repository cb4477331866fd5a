"""Bid-price model export: one XGBoost model, three serving formats that must agree with it."""
