"""Model folders: finding and checking them, the starter model, the Qwen-1 import, inference and export."""
