"""The phase files, shipped inside opskit as the package `opskit.engine.phases`."""
