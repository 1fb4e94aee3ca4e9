"""Layers (qcow2 files on pools) and the volumes built from them. Imports the areas up to offerings."""
