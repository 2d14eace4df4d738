"""The core both halves of HOPS import (the stability collector and the magickbox node).

* :mod:`.errors`   ``ConfigError``: a configuration value is wrong; names the key.
* :mod:`.graphite` ``GraphiteAddress``, ``GraphiteSender`` (confirmed delivery), ``DeliveryError``.
* :mod:`.fsutil`   durable writes: ``atomic_write`` (temporary file, fsync, rename, directory
  fsync) and ``fsync_dir``.
* :mod:`.values`   parsing of configuration values shared by both halves (booleans, days).

Nothing here imports either half.
"""
