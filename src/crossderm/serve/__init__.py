"""``crossderm serve`` and ``crossderm explain``: try a trained run on one image, with Grad-CAM, locally."""
