"""Data layer: MMRec-format reader, synthetic generator, samplers and the DataModule."""

from egra.data.errors import DataError

__all__ = ["TEST", "TRAIN", "VALID", "DataError", "Interactions", "RecDataModule"]


def __getattr__(name: str):
    # Imported when asked for: the config check needs DataError alone, without numpy; the
    # DataModule pulls in Lightning (~5 s).
    if name in ("TEST", "TRAIN", "VALID", "Interactions"):
        from egra.data import interactions

        return getattr(interactions, name)
    if name == "RecDataModule":
        from egra.data.datamodule import RecDataModule

        return RecDataModule
    raise AttributeError(name)
