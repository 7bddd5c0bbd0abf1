"""Pictures made on the device as uint8 images.

Colour maps and overlays (:mod:`~camcli.pictures.render`), comparison sheets
(:mod:`~camcli.pictures.sheet`) and feature-map grids (:mod:`~camcli.pictures.grids`).
"""
