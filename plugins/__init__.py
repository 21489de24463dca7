"""The built-in plugins of l2obench, registered through the ``l2obench`` entry-point
group exactly as a third-party package registers its own."""
