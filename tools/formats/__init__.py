"""Edit formats, one module each, registered once: what a model writes to change a file, and how it lands.

`base.Format` is the one type; `registry` holds every format by name and by the fence its blocks are written in.
"""
