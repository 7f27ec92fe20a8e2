"""Generated gRPC contracts of minithreads (do not edit: run `make proto`)."""
