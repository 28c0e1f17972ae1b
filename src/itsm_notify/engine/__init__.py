"""The engine: plan, render, send and record, with the pipeline that overlaps them."""
