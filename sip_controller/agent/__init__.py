"""What the model is given: profiles, the accept body and session patches, tools, templates, validation, preflight."""
