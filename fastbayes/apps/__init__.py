"""The demo's parts, apart from the library: training loops (``demo``), small models (``models``) and offline data
(``data``).  Imported lazily by ``fastbayes.cli``; ``import fastbayes`` never imports this package."""
