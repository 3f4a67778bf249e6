"""The face pipeline: decode → detect → align → embed, one module per stage."""
