"""The router's guarantees as functions over traces, and the suites that check them."""
