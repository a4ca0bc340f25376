"""What the book shows: reported numbers, figures, tables, papermill runs and pages."""
import warnings

# Set before anything imports tqdm.auto: in kernels without ipywidgets it warns once, then falls
# back to text progress bars, and the warning would land in every executed notebook.
warnings.filterwarnings("ignore", message="IProgress not found")
