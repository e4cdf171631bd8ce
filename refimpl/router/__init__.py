"""The live reference router: the core, driven over real processes and real HTTP."""
