"""One file per schema revision; never edit one that has been released, add the next."""
