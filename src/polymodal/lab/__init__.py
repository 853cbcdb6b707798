"""Labs: end-to-end experiments that train several models, compare them and write a report."""
