"""Worked examples: user models, data and training code run by QFLARE devices (see each README)."""
