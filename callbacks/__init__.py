"""Lightning callbacks for lit-vr1 (YAML: ``class_path: callbacks.<Name>``)."""
