"""The host-independent method: settings, schedule, sampler, noise, the denoiser protocol, the stages, EVS and the
one composition of a run. Imports neither the WebUI nor diffusers."""
