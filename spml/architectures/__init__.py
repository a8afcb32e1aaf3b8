"""The built-in architectures. Each module builds one family and registers it in
:data:`spml.model.ARCHITECTURES` where it is defined; importing this package registers them all.

A new architecture is one module here that ends in ``@register_architecture("name")`` on its builder
(see :mod:`spml.architectures.compact`), plus its import line below.
"""

from spml.architectures import compact, q2l, resnet

__all__ = ["compact", "q2l", "resnet"]
