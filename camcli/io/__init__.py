"""Images in and out: discovery, decoding, writes, resume keys, the lock, device copies.

The constant below imports nothing heavy: the command line shows it in its help.
"""

# Refuse images with more pixels (decompression bombs) unless --max-pixels says otherwise:
# Pillow's own error threshold (2 x MAX_IMAGE_PIXELS).
DEFAULT_MAX_PIXELS = 178_956_970
