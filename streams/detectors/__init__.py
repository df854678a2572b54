"""The stream detectors: each keeps event-time windows of the priced calls it sees and reports findings."""
