"""Image codecs behind one interface: classical (Pillow) backends and CADC."""
