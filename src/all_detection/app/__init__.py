"""The smear page: a person drops in a blood smear image and sees the predicted stage, the evidence
(class probabilities, Grad-CAM, the blast mask) and the caveats (a colour unlike the training images,
for research, not diagnosis); a folder or zip of images gives the inference pipeline's table.

`python -m all_detection.app` serves the project's champion (`models:/all_detection@champion`) or any
MLflow model URI on a local port: `loading` finds the model and its run, `scoring` answers images as the
inference pipeline does, `server` is the FastAPI app with its bounded queue, `static/` the page.
"""
