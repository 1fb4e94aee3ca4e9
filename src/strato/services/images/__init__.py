"""Templates and ISOs: registration, copies on image stores and pools, deletion. Imports the areas up to
storage."""
