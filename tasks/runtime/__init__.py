"""What the Prefect tasks and flows drive: ffmpeg and stitching, thumbnails, leases and publishing, disk space,
the local Ray instance and the Ray pools, the model cache, progress reporting, the training stages and the
toy-world evaluation.

Nothing here defines a Prefect task or flow; these modules can be used and tested without a Prefect run.
"""
