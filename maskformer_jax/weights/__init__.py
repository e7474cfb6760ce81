"""Importers of MaskFormer weights from other implementations."""
