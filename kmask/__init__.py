"""kmask: Mask R-CNN with ResNet-FPN for TensorFlow 2 and Keras 3."""
