"""Circuit discovery: edge-level patching and attribution over the EAP-IG graph (see graph.py)."""
