"""The standalone side: the ``i4vgen`` CLI, its typed jobs, outputs and video input, over the diffusers backbones."""
