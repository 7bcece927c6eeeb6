/*
 * Entry point. The VMM enters every vCPU here in 64-bit mode with RDI = boot info (see
 * docs/test-guest.md). The first to claim boot_claimed serves the guest; every other one takes
 * an index and runs the AP loop below (vcpus.c reads what it leaves).
 */
	.section .text.start, "ax"
	.globl _start
_start:
	movl	$1, %eax
	lock xchgl %eax, boot_claimed(%rip)
	testl	%eax, %eax
	jnz	ap_start
	/* Own stack, so nothing depends on the VMM's RSP. */
	leaq	stack_top(%rip), %rsp
	movq	%rdi, %rbx
	/* Zero .bss (small by design: large buffers live in .noinit). */
	cld
	leaq	__bss_start(%rip), %rdi
	leaq	__bss_end(%rip), %rcx
	subq	%rdi, %rcx
	shrq	$3, %rcx
	xorl	%eax, %eax
	rep stosq
	movq	%rbx, %rdi
	call	guest_main

	/* No stack: an AP only touches its own slots. Index 1...7; any further vCPU just halts. */
ap_start:
	movl	$1, %ecx
	lock xaddl %ecx, ap_next(%rip)
	cmpl	$8, %ecx
	jae	park
	leaq	vcpu_runs(%rip), %rsi
	leaq	vcpu_ack(%rip), %rdi
ap_loop:
	lock incq (%rsi,%rcx,8)
	movq	vcpu_mailbox(%rip), %rax
	movq	%rax, (%rdi,%rcx,8)
	hlt
	jmp	ap_loop
park:
	hlt
	jmp	park

	.section .data
	.balign 8
	.globl vcpu_runs, vcpu_ack, vcpu_mailbox
vcpu_runs:
	.zero	64
vcpu_ack:
	.zero	64
vcpu_mailbox:
	.quad	0
boot_claimed:
	.long	0
ap_next:
	.long	1

	.section .noinit, "aw", @nobits
	.balign 16
	.skip	16384
stack_top:

	.section .note.GNU-stack, "", @progbits
