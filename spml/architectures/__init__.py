"""The built-in architectures. Each module builds one family and registers it in
:data:`spml.model.ARCHITECTURES` where it is defined; importing this package registers them all.

A new architecture is one module here whose builder carries ``@register_architecture("name")`` (see
:mod:`spml.architectures.compact`), and its name in the import line below.
"""

# Imported for what they do on import: each module registers its architectures.
from spml.architectures import compact, efficientnet, q2l, resnet  # noqa: F401
