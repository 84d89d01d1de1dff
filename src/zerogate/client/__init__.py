"""The client: sign in, register the device, bring a split tunnel up and down."""
