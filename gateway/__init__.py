"""satgw gateway: one sub-package per room, in the order an image travels.

``codec`` -> ``ratecontrol`` -> ``sender`` (with ``protocol``, ``store``,
``transport``, ``daemon``) -> the link -> ``ground``; plus ``cli``, ``eval``
and ``training``. The README's folder map says what each holds.
"""

__version__ = "0.1.0"
