"""Which vin.diffusers handles are installed on which transformer, and removing them all.

One handle of each kind (``ChunkedAttention``, ``LongVideo``) per transformer: a second
``chunked_attention`` would save the first one's processors as the "stock" ones, a second
``LongVideo`` would cut windows into windows. The registry holds weak references (a registry entry
never keeps a transformer alive); an installed handle itself stays alive through the hooks it
registered on the transformer, so a handle the caller dropped without ``remove()`` is still found
here and removed by :func:`remove`.
"""

from __future__ import annotations

import weakref

__all__ = ["installed", "remove"]

# transformer -> {kind: weak reference to the installed handle}
_HANDLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def lookup(transformer, kind: str):
    """The installed (not removed) handle of ``kind`` on ``transformer``, or None."""
    ref = _HANDLES.get(transformer, {}).get(kind)
    handle = None if ref is None else ref()
    return handle if handle is not None and handle.installed else None


def register(transformer, kind: str, handle) -> None:
    _HANDLES.setdefault(transformer, {})[kind] = weakref.ref(handle)


def unregister(transformer, kind: str, handle) -> None:
    """Forget ``handle`` (if it is the registered one of its kind)."""
    handles = _HANDLES.get(transformer, {})
    ref = handles.get(kind)
    if ref is not None and ref() is handle:
        del handles[kind]


def installed(transformer) -> tuple:
    """The vin.diffusers handles installed on ``transformer`` (``ChunkedAttention``, ``LongVideo``), in
    the order they were installed; empty when none is."""
    return tuple(h for h in (lookup(transformer, kind) for kind in _HANDLES.get(transformer, {})) if h is not None)


def remove(transformer) -> tuple:
    """Remove every vin.diffusers handle installed on ``transformer`` (stock processors back, hooks
    gone), also those whose handle object the caller no longer holds. Returns the removed handles."""
    handles = installed(transformer)
    for handle in reversed(handles):
        handle.remove()
    return handles
