"""Dev tools kept out of the product and its images: benchmarks, the local runner and its moto
Step Functions shim, feature-cache benchmarks."""
