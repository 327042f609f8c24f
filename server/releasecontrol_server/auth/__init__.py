"""Who is calling: identities from the transport. Roles and authorize() come with the auth modes."""
