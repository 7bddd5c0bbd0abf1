"""Explanation methods and the scores that judge them: the maths, batched on the device.

* :mod:`~camcli.methods.names`: the method and metric names the options accept (no torch);
* :mod:`~camcli.methods.forward`: the one forward pass a batch shares (predictions, the
  layers' activations and gradients, guided backprop to the input);
* :mod:`~camcli.methods.batch`: every requested method of a batch computed from that pass;
* one module per family: :mod:`~camcli.methods.gradient` (Grad-CAM and its kin),
  :mod:`~camcli.methods.activation` (CAM, Eigen-CAM), :mod:`~camcli.methods.perturbation`
  (Score-CAM, SmoothGrad), :mod:`~camcli.methods.rise`, :mod:`~camcli.methods.integrated`,
  :mod:`~camcli.methods.lrp`, :mod:`~camcli.methods.guided`;
* :mod:`~camcli.methods.metrics`: the faithfulness scores (deletion, insertion, drop).
"""
