"""Smoke-test Flower app (ServerApp + ClientApp) for the runtime tests."""
