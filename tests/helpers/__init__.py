"""Helpers the tests share: configs, callbacks injected into CLI runs, runners."""
