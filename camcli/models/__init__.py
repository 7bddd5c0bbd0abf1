"""Models: the registry, your own models, class names, token layouts, layers and hooks.

* :mod:`~camcli.models.registry`: the embedded default, the torchvision zoo, ``load_model``;
* :mod:`~camcli.models.own`: factories (``FILE.py:FUNC``), timm models, options that
  customise a model (input size, normalisation, class files);
* :mod:`~camcli.models.loaded`: the typed :class:`~camcli.models.loaded.LoadedModel` every
  layer above receives, and weight files;
* :mod:`~camcli.models.layers`: each family's default layer;
  :mod:`~camcli.models.hooks`: resolving a layer name and capturing its output;
  :mod:`~camcli.models.probe`: every layer's output shape (``camcli layers``);
* :mod:`~camcli.models.classes`, :mod:`~camcli.models.tokens`: class names, transformer
  token grids.

The constants below import nothing heavy: the command line shows them in its help.
"""

EMBEDDED_MODEL = "efficientnet_lite0"
OFFLINE_ENV = "CAMCLI_OFFLINE"
# A layer name ending in this means the layer's output after a ReLU: the map a model
# rectifies functionally before pooling (torchvision's DenseNet ends with
# ``F.relu(features, inplace=True)``, a ReLU no module hook sees). CAM's and XGrad-CAM's
# derivations assume the map that feeds the pooling: DenseNet's default layer is
# ``features.norm5+relu``.
RECTIFIED = "+relu"
