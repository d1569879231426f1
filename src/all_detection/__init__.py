"""ALL Detection: Acute Lymphoblastic Leukaemia detection and staging from blood smear images."""

__version__ = "0.1.0"
