"""The Locust scenarios, shipped inside opskit as the package `opskit.benchmarking.scenarios`."""
