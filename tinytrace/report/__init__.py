"""What the book shows: reported numbers, figures, tables, papermill runs and pages."""
