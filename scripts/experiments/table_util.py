"""Helpers shared by the experiment table scripts."""
import statistics


def ms(values, digits=4):
    """'mean ± std' of the values that are numbers (None and NaN left out), '-' when none."""
    values = [v for v in values if v is not None and v == v]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"
