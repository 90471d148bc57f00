"""Object id rules shared by every layer: masks hold 0 (background), 1..MAX_OBJECTS, 255 (DAVIS void)."""

MAX_OBJECTS = 254  # ids 1..254 are objects
VOID_ID = 255  # DAVIS 'void' (ignored/unknown pixels) in ground truth; background in the semi-supervised task
